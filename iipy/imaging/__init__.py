"""Images: where pixels come from and how they become tiles."""
