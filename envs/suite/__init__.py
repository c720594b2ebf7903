"""The bundled offline environments; importing this package registers them by name."""

from envs.suite import stoichiometry  # noqa: F401  (registers "stoichiometry")
