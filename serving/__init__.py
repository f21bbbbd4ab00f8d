"""Serving: the model, the prompt, the Result, the Ray Serve application."""
