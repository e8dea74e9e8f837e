"""Small shared helpers (atomic file writes, device selection, locating shared datasets)."""
