"""The HTTP edge: kbloop's own API and an OpenAI-compatible one, the service layer that keeps
concurrent requests consistent, the report files and the web page."""
