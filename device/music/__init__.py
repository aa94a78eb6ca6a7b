"""The music engine: mood -> therapy policy -> Spotify Connect playback, learning what helps.

Modules: ``policy`` (mood x policy -> target, pure), ``player`` (the Player
protocol, the dry-run player), ``spotify`` (spotipy adapter), ``cache``
(playlist track CSVs), ``history`` (SQLite), ``learning`` (the bandit),
``engine`` (the rules), ``cli`` (``moodbox spotify login``, ``moodbox history``).
Submodules are imported where used, so importing this package stays cheap.
"""

__all__: list[str] = []
