-- The attribution rules of contract §5 as one DuckDB query over the archives (the independent
-- check and the comparison of scripts/bench-attribution.sh). Parameters, substituted by the
-- script: {archive} (the archive root), {from_ms} and {to_ms} (the range, epoch ms), {out}
-- (the Parquet file written).
--
-- Two simplifications, both exact for the workloads adsproc generates (docs/attribution.md):
-- an event's first arrival at a (user, store) is its candidate (retries come minutes later,
-- ids are never reused), and an order has one life (its arrivals come within days of it, no
-- order_id is reused after a week).
COPY (
WITH ads AS (
    SELECT event_id, event_type, ad_id, campaign_id, advertiser_id, user_id, store_id,
           epoch_ms(event_time) AS et, epoch_ms(_kafka_timestamp) AS ingest, _kafka_partition AS p, _kafka_offset AS o
    FROM read_parquet('{archive}/ad-events/*/*/*.parquet')
    WHERE event_id <> '' AND event_type IN ('impression', 'click') AND ad_id <> '' AND region <> ''
      AND event_time IS NOT NULL AND _kafka_timestamp IS NOT NULL
      AND epoch_ms(event_time) <= epoch_ms(_kafka_timestamp) + 300000
      AND epoch_ms(event_time) >= epoch_ms(_kafka_timestamp) - 604800000
      AND user_id <> '' AND store_id <> ''
),
candidates AS (
    SELECT * FROM ads
    QUALIFY row_number() OVER (PARTITION BY user_id, store_id, event_id ORDER BY ingest, p, o) = 1
),
arrivals AS (
    SELECT order_id, user_id, store_id, region, epoch_ms(order_time) AS ot, status, amount_cents, currency,
           epoch_ms(_kafka_timestamp) AS ingest, _kafka_partition AS p, _kafka_offset AS o
    FROM read_parquet('{archive}/orders/*/*/*.parquet')
    WHERE order_id <> '' AND user_id <> '' AND store_id <> '' AND region <> ''
      AND status IN ('placed', 'completed', 'cancelled') AND amount_cents >= 0
      AND regexp_full_match(currency, '[A-Z]{3}')
      AND order_time IS NOT NULL AND _kafka_timestamp IS NOT NULL
      AND epoch_ms(order_time) <= epoch_ms(_kafka_timestamp) + 300000
      AND epoch_ms(order_time) >= epoch_ms(_kafka_timestamp) - 604800000
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY order_id ORDER BY ingest, p, o) AS first_rank,
              row_number() OVER (PARTITION BY order_id ORDER BY ingest DESC, p DESC, o DESC) AS last_rank
    FROM arrivals
),
firsts AS (SELECT * FROM ranked WHERE first_rank = 1 AND ot >= {from_ms} AND ot < {to_ms}),
lasts AS (SELECT order_id, status, amount_cents, currency FROM ranked WHERE last_rank = 1),
matched AS (
    SELECT f.order_id, c.event_id, c.event_type, c.ad_id, c.campaign_id, c.advertiser_id, c.et
    FROM firsts f JOIN candidates c ON c.user_id = f.user_id AND c.store_id = f.store_id
    WHERE c.et <= f.ot AND c.ingest < f.ingest + 60000
      AND ((c.event_type = 'click' AND c.et > f.ot - 604800000) OR (c.event_type = 'impression' AND c.et > f.ot - 86400000))
    QUALIFY row_number() OVER (PARTITION BY f.order_id ORDER BY c.event_type = 'click' DESC, c.et DESC, c.event_id) = 1
)
SELECT f.order_id, f.user_id, f.store_id, f.region, make_timestamp(f.ot * 1000) AS order_time,
       l.status, l.amount_cents, l.currency, m.ad_id, nullif(m.campaign_id, '') AS campaign_id,
       nullif(m.advertiser_id, '') AS advertiser_id, m.event_id AS attributed_event_id,
       m.event_type AS attribution_type, make_timestamp(m.et * 1000) AS ad_event_time
FROM firsts f JOIN matched m USING (order_id) JOIN lasts l USING (order_id)
) TO '{out}' (FORMAT parquet);
