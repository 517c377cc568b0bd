"""`imgproc serve`: the HTTP API and web page, one more caller of `batch.process_one`.

Needs `pip install 'imgproc[serve]'` (FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations
