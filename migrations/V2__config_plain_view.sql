-- Plaintext settings only: what the service roles may read (they never see encrypted values).
CREATE VIEW v_config_plain AS
SELECT key, value, encrypted FROM config WHERE NOT encrypted;
