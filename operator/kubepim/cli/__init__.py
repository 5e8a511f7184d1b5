"""``kubectl pim``: the kubectl plugin (request, approve and follow access as yourself)."""
