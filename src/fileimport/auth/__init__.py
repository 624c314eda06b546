"""Bearer tokens: hashed at rest, scoped, bound to one project."""
