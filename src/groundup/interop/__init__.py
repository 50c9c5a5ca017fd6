"""Converting weights to and from other implementations (proof of correctness by agreement)."""
