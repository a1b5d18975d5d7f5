"""The leaf below every layer: files written atomically and checksummed, run locks, process
groups and the local launcher, seeded random streams. It imports no other part of lvmkit."""
