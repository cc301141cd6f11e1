"""`stepaudio demo`: a Gradio page to talk to a Step-Audio model (docs/DEMO.md)."""
