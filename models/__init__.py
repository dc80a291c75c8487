"""The network and its checkpoint format."""
