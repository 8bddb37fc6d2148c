-- 031: prices per MIG profile and the share rule per GPU model (issue 14, part 2).
--
-- profile_prices  grain (gpu_model, profile, effective_from): from that UTC day on, one hour
--   of ONE instance of `profile` on a GPU of `gpu_model` costs price_per_instance_hour (not
--   per GPU-hour). A profile price wins over the share rule. `profile` is the name exactly
--   as reported (e.g. 1g.10gb, 1g.18gb+me). Set with
--   `migmeter price set MODEL PRICE --profile 1g.10gb --from DAY`.
-- share_rules     grain (gpu_model, effective_from): how an instance without a profile price
--   shares its GPU's price (prices.price_per_gpu_hour): 'compute' = compute slices / total
--   (what chargeback has always billed), 'memory' = memory slices / 8 (4 on A30-class GPUs),
--   'max' = the larger of the two. No row = 'compute'. Set with
--   `migmeter price rule MODEL compute|memory|max --from DAY`.
-- gpu_profile_prices / gpu_share_rules  the same rows with effective_to (the next row's
--   effective_from, exclusive; NULL = in force), for the reader role.
-- Like prices, only the warehouse owner writes them.

CREATE TABLE profile_prices (
    gpu_model                text          NOT NULL CHECK (length(gpu_model) BETWEEN 1 AND 256),
    profile                  text          NOT NULL CHECK (length(profile) BETWEEN 1 AND 64),
    price_per_instance_hour  numeric(14,6) NOT NULL CHECK (price_per_instance_hour >= 0),
    currency                 char(3)       NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    effective_from           date          NOT NULL,
    PRIMARY KEY (gpu_model, profile, effective_from)
);

CREATE TABLE share_rules (
    gpu_model       text NOT NULL CHECK (length(gpu_model) BETWEEN 1 AND 256),
    rule            text NOT NULL CHECK (rule IN ('compute', 'memory', 'max')),
    effective_from  date NOT NULL,
    PRIMARY KEY (gpu_model, effective_from)
);

CREATE VIEW gpu_profile_prices AS
SELECT gpu_model, profile, price_per_instance_hour, currency::text AS currency, effective_from,
       lead(effective_from) OVER (PARTITION BY gpu_model, profile ORDER BY effective_from) AS effective_to
FROM profile_prices;

CREATE VIEW gpu_share_rules AS
SELECT gpu_model, rule, effective_from,
       lead(effective_from) OVER (PARTITION BY gpu_model ORDER BY effective_from) AS effective_to
FROM share_rules;

REVOKE ALL ON profile_prices, share_rules FROM migmeter_reader, migmeter_writer;
GRANT SELECT ON gpu_profile_prices, gpu_share_rules TO migmeter_reader;
