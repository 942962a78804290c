// Numbers as a person reads them.

/** @param {number} n */
export function formatCount(n) {
  return new Intl.NumberFormat().format(n);
}

/**
 * Money as the API sends it (a decimal USD string, or null when unknown), as a person reads it: cents from
 * $0.01 up ("$0.12"), four significant digits below that ("$0.0001234"), "cost unknown" for null. The string
 * is formatted as the decimal it is: Intl.NumberFormat reads a string without going through a float.
 * @param {string | null | undefined} value
 * @returns {string}
 */
export function formatCost(value) {
  if (value === null || value === undefined) return "cost unknown";
  const amount = Number(value);
  if (!Number.isFinite(amount)) return `$${value}`;
  const tiny = amount !== 0 && Math.abs(amount) < 0.01;
  const format = new Intl.NumberFormat(undefined, {
    style: "currency",
    currency: "USD",
    currencyDisplay: "narrowSymbol",
    ...(tiny ? { maximumSignificantDigits: 4 } : { minimumFractionDigits: 2, maximumFractionDigits: 2 }),
  });
  return format.format(/** @type {any} */ (String(value)));
}

/**
 * What a cost's tooltip says: the exact figure the server sent.
 * @param {string | null | undefined} value
 * @returns {string}
 */
export function exactCost(value) {
  if (value === null || value === undefined) return "No price is known for the model, so the cost is unknown";
  return `$${value} exactly`;
}
