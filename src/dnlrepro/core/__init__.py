"""Shared by every stage: configuration, profiles, registry, runs, workspace, files."""
