"""Pure decisions: eligibility review, approval quorum, lifecycle, expiry.

Imports neither kopf nor kubernetes; takes `now` as an argument.
"""
