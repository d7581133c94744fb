"""Domain events: a transactional outbox, delivered in process or to NATS JetStream."""
