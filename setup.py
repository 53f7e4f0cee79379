"""What pyproject.toml cannot say: the repository's ``agents/`` folder installs as the package ``aios_agents``.

The import name ``agents`` belongs to the OpenAI Agents SDK (``openai-agents``, in the test extra, and in many an
agent developer's environment): two distributions owning one top-level name overwrite each other, and ``aios run``
found the SDK's package instead of ours."""

from setuptools import find_packages, setup

AGENTS = ["aios_agents"] + [f"aios_agents.{name}" for name in find_packages("agents")]

setup(packages=find_packages(include=["aios*", "workers*"]) + AGENTS, package_dir={"aios_agents": "agents"})
