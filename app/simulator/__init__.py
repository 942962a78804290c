"""An offline imitation of the OpenAI API (Responses + Conversations) that speaks the real wire protocol.

`create_simulator_app()` returns an independent FastAPI app: `/v1/...` as OpenAI serves it (bearer token of any
value), `/_control/...` for tests and benchmarks (faults, pacing, the request log, reset; open, behind a control
token, or left out). Output is deterministic: the reply echoes the newest user message (or the tool outputs it
answers) and is padded to `/_control/config`'s `output_tokens`; a token is a word or a punctuation mark.

Where it knowingly differs from the real service:
- A non-background stream whose client leaves ends as `cancelled`, with usage for the tokens produced so far.
- A cancelled background stream just ends: the real service sends no event type for it that the SDK knows.
- A non-streamed call that hits an `error_event` fault answers HTTP 500 (429 for quota and rate-limit codes)
  and stores the response as `failed`.
- `cut` drops the connection by returning without the final chunk; uvicorn logs one line about it.
- Prompt caching has no 1,024-token minimum: a second turn on a conversation (or a `previous_response_id`
  chain) with the same instructions reports the previous turn's input as `cached_tokens`.
- Reasoning tokens are counted but take no time; `first_token_delay_ms` stands in for thinking time.
- Unknown prompt variables are ignored; `text.format` is echoed but the reply is always plain text.
"""

from app.simulator.app import create_simulator_app
from app.simulator.prompts import DEMO_PROMPT_ID

__all__ = ["DEMO_PROMPT_ID", "create_simulator_app"]
