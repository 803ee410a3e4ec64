"""The catalog service: a FastAPI app shaped for one worker process per pod.

Start reading at `service.app.create_app`; each domain lives in its own
package (`service.items`) with the same module names: `router` (HTTP),
`repository` (SQL) and `schemas` (Pydantic models).
"""
