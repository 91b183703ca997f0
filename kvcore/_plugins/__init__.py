"""Format plugins: discovery, selection, compatibility, their contributions, the conformance kit."""
