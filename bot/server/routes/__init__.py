"""HTTP and WebSocket routes; each module exposes an `APIRouter` named `router`."""
