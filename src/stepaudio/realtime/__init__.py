"""Realtime spoken dialogue: the dual brain (think while speaking), streaming TTS, VAD and the WebSocket protocol.

The server mounts `routes.mount_realtime`; the engine only ever sees ordinary requests.
"""
