"""Diagnostics: the coroutine dump (_dump), the deadlock report (_deadlock),
the blocking monitor (_monitor), the diagnostics thread with its control
socket (_watch), statistics as text (_stats), and their start-up from the
environment (_startup).  They read the core and the integrations, which
never import them.
"""
