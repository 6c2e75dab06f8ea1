"""The web dashboard at ``/ui/``: page shells served here, filled from the API by the browser."""
