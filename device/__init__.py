"""Moodbox: the daemon that turns faces into moods and moods into music."""

__version__ = "0.1.0"
