"""Plots (plots.py) and Markdown reports (markdown.py), in one style."""
