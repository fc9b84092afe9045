ALTER TABLE "environment_leases" ADD COLUMN "slot" integer;--> statement-breakpoint
-- The active leases of a capacity-limited environment each take a slot: 0, 1, 2... in the
-- order they were acquired, so every slot in use is below the count, which is at most the
-- capacity.
UPDATE "environment_leases" l SET "slot" = n.slot
FROM (
  SELECT c.id, (row_number() OVER (PARTITION BY c.environment_id ORDER BY c.acquired_at, c.id) - 1)::int AS slot
  FROM "environment_leases" c JOIN "environments" e ON e.id = c.environment_id
  WHERE c.status = 'active' AND e.capacity IS NOT NULL
) n
WHERE l.id = n.id;--> statement-breakpoint
CREATE UNIQUE INDEX "environment_leases_active_slot_uq" ON "environment_leases" USING btree ("environment_id","slot") WHERE "environment_leases"."status" = 'active' AND "environment_leases"."slot" IS NOT NULL;
