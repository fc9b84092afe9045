DROP INDEX "environment_leases_active_slot_uq";--> statement-breakpoint
ALTER TABLE "environments" ADD COLUMN "pool" jsonb;--> statement-breakpoint
ALTER TABLE "environments" ADD COLUMN "pool_status" jsonb DEFAULT '{}'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "provider_resources" ADD COLUMN "pool_member" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "provider_resources" ADD COLUMN "made_by" text;--> statement-breakpoint
ALTER TABLE "provider_resources" ADD COLUMN "ready_details" jsonb;--> statement-breakpoint
CREATE INDEX "environment_leases_pooled_idx" ON "environment_leases" USING btree ("environment_id") WHERE "environment_leases"."status" = 'pooled';--> statement-breakpoint
CREATE INDEX "provider_resources_pool_ready_idx" ON "provider_resources" USING btree ("environment_id","ready_at") WHERE "provider_resources"."status" = 'ready' AND "provider_resources"."pool_member";--> statement-breakpoint
CREATE UNIQUE INDEX "environment_leases_active_slot_uq" ON "environment_leases" USING btree ("environment_id","slot") WHERE "environment_leases"."status" IN ('active', 'pooled') AND "environment_leases"."slot" IS NOT NULL;