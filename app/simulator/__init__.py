"""An offline imitation of the OpenAI API (Responses + Conversations) that speaks the real wire protocol."""

from app.simulator.app import create_simulator_app
from app.simulator.prompts import DEMO_PROMPT_ID

__all__ = ["DEMO_PROMPT_ID", "create_simulator_app"]
