"""Synthetic tasks for the demo, the examples and the tests: signals, images and volumes with a known evidence
region (``data``) and small classifiers of any rank to train on them (``models``).
"""
