"""``python -m curation review OUT``: a local web page where a person accepts, rejects and re-captions clips.

- ``security``: the token, its cookie, and the Host/Origin checks every request passes.
- ``data``: what the page shows (manifest rows with the person's decisions folded in) and the
  previews, served by clip id only.
- ``app``: the Starlette app (JSON API + the one page in ``static/``) and ``serve`` (uvicorn).
"""
