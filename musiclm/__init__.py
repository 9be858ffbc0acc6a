"""MusicLM-style text-to-music."""
