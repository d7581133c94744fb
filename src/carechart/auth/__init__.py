"""Identity and access: passwords, tokens, sessions, MFA, lockout (SECURITY.md group A)."""
