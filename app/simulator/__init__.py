"""An offline imitation of the OpenAI API (Responses + Conversations) that speaks the real wire protocol.

`create_simulator_app()` returns an independent FastAPI app: `/v1/...` as OpenAI serves it (bearer token of any
value), `/_control/...` for tests and benchmarks (faults, pacing, the request log, reset; open, behind a control
token, or left out). Output is deterministic: a Markdown answer about the newest user message (one of a few
shapes, picked by a hash of it: lists, a table, fenced code), or a report of the tool outputs it answers, cut or
padded to `/_control/config`'s `output_tokens`; a token is a word or a punctuation mark. Reasoning models send a
reasoning summary when the request or its prompt asks for one. It starts instant and in memory;
`config=SimulatorConfig.at_speed("model")` paces it like a model, and `state_database_url` keeps its conversations
and finished responses in a database across restarts (what `parley serve` does with the simulator it mounts).

Where it knowingly differs from the real service:
- A non-background stream whose client leaves ends as `cancelled`, with usage for the tokens produced so far.
- A cancelled background stream just ends: the real service sends no event type for it that the SDK knows.
- A non-streamed call that hits an `error_event` fault answers HTTP 500 (429 for quota and rate-limit codes)
  and stores the response as `failed`.
- `cut` drops the connection by returning without the final chunk; uvicorn logs one line about it.
- Prompt caching has no 1,024-token minimum: a second turn on a conversation (or a `previous_response_id`
  chain) with the same instructions reports the previous turn's input as `cached_tokens`.
- Reasoning tokens are counted but take no time; `first_token_delay_ms` stands in for thinking time. A
  reasoning summary streams at the token rate but counts as reasoning, not as output text.
- With a state database, a response still running when the process stops is lost, and a background response
  read back from it can no longer be streamed (`GET ?stream=true`).
- Unknown prompt variables are ignored; `text.format` is echoed but the reply is always plain text.
"""

from app.simulator.app import create_simulator_app
from app.simulator.prompts import DEMO_PROMPT_ID
from app.simulator.state import SimulatorConfig

__all__ = ["DEMO_PROMPT_ID", "SimulatorConfig", "create_simulator_app"]
