"""Webhook deliveries: signed, stored, retried on the Standard Webhooks schedule."""
