"""Agents that run on the kernel: ``aios run <name> "<task>"`` runs ``agents/<name>/agent.py``'s ``run``."""
