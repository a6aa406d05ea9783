"""Picker replicas that agree: each replica's approximate-index picks shared with the others.

`settings` is what `replicas:` in the configuration parses into (imported by the configuration
model); `wire` is the frames on the TCP links; `sharing` runs the links. Nothing is imported
here: without `replicas:` configured, msgspec and the sharing service stay out of the process.
"""
