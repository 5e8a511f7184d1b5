"""Notifications: routes, channels and the deliveries between them."""
