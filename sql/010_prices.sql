-- 010: GPU-hour prices for chargeback, and the price periods view.
--
-- prices          grain: one row per (gpu_model, effective_from).
--   gpu_model       the model string exactly as collectors report it (gpus.gpu_model);
--   price_per_gpu_hour  the price of one whole physical GPU for one hour (a MIG slice costs
--                   its share slices/total_slices, which is already inside the GPU-hours);
--   currency        three-letter code; effective_from: the UTC day from which it applies.
--   Set with `migmeter price set MODEL PRICE --from DATE [--currency USD]`.
-- gpu_prices      view, grain (gpu_model, effective_from): the same rows with effective_to
--   (the next price's effective_from, exclusive; NULL = still in force), so a usage day d
--   is priced by the row with effective_from <= d < effective_to.
--
-- Only the migration owner (the operator running `migmeter price`) writes prices; the
-- processor never needs them, the reader sees them through gpu_prices.

CREATE TABLE prices (
    gpu_model           text          NOT NULL CHECK (length(gpu_model) BETWEEN 1 AND 256),
    price_per_gpu_hour  numeric(14,6) NOT NULL CHECK (price_per_gpu_hour >= 0),
    currency            char(3)       NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    effective_from      date          NOT NULL,
    PRIMARY KEY (gpu_model, effective_from)
);

CREATE VIEW gpu_prices AS
SELECT gpu_model,
       price_per_gpu_hour,
       currency::text AS currency,
       effective_from,
       lead(effective_from) OVER (PARTITION BY gpu_model ORDER BY effective_from) AS effective_to
FROM prices;

REVOKE ALL ON prices FROM migmeter_reader, migmeter_writer;
GRANT SELECT ON gpu_prices TO migmeter_reader;
