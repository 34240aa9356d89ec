"""Helpers every kopt technique shares: model rewriting and layer walking."""
