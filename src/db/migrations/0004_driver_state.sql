ALTER TABLE "environment_leases" ADD COLUMN "driver" text;--> statement-breakpoint
ALTER TABLE "environment_leases" ADD COLUMN "driver_state" jsonb;--> statement-breakpoint
ALTER TABLE "environment_leases" ADD COLUMN "retain_until" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "heartbeat_runs" ADD COLUMN "process_identity" jsonb;--> statement-breakpoint
CREATE INDEX "environment_leases_retention_idx" ON "environment_leases" USING btree ("retain_until") WHERE "environment_leases"."status" = 'retained' AND "environment_leases"."retain_until" IS NOT NULL;--> statement-breakpoint
-- Written every second for every running run and never read: recovery reads berth_servers.
ALTER TABLE "heartbeat_runs" DROP COLUMN "heartbeat_at";--> statement-breakpoint
-- Leases an earlier version prepared resources for: their driver is the environment's own
-- (never the caller-writable metadata's word for it); cleanup derives every path from the
-- lease id, so nothing a caller wrote reaches it.
UPDATE "environment_leases" l SET "driver" = e."driver"
FROM "environments" e
WHERE e."id" = l."environment_id" AND l."metadata" ? 'preparedBy';--> statement-breakpoint
-- Retained leases of an earlier version had no deadline: they get the default one from now.
UPDATE "environment_leases" SET "retain_until" = now() + interval '24 hours' WHERE "status" = 'retained';
