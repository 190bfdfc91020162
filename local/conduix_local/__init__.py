"""The local stack: embedded stand-ins that let the SAM application run on one machine.

Nothing here is deployed. Product code under layers/ and functions/ never imports it.
"""
