CREATE TABLE "provider_resources" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"company_id" uuid NOT NULL,
	"environment_id" uuid,
	"driver" text NOT NULL,
	"provider_id" text,
	"labels" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"state" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"status" text NOT NULL,
	"lease_id" uuid,
	"config_snapshot" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"next_attempt_at" timestamp with time zone,
	"last_error" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"ready_at" timestamp with time zone,
	"destroy_after" timestamp with time zone,
	"destroyed_at" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "provider_resources_status_ck" CHECK ("provider_resources"."status" IN ('provisioning', 'ready', 'leased', 'draining', 'destroying', 'destroyed', 'lost'))
);
--> statement-breakpoint
CREATE TABLE "run_executions" (
	"run_id" uuid PRIMARY KEY NOT NULL,
	"resource_id" uuid,
	"driver" text NOT NULL,
	"handle" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"host" text,
	"output_offset" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "environment_leases" ADD COLUMN "resource_id" uuid;--> statement-breakpoint
ALTER TABLE "provider_resources" ADD CONSTRAINT "provider_resources_environment_id_environments_id_fk" FOREIGN KEY ("environment_id") REFERENCES "public"."environments"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "run_executions" ADD CONSTRAINT "run_executions_run_id_heartbeat_runs_id_fk" FOREIGN KEY ("run_id") REFERENCES "public"."heartbeat_runs"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "provider_resources_lease_uq" ON "provider_resources" USING btree ("lease_id") WHERE "provider_resources"."lease_id" IS NOT NULL;--> statement-breakpoint
CREATE INDEX "provider_resources_due_idx" ON "provider_resources" USING btree ("next_attempt_at") WHERE "provider_resources"."status" = 'destroying';--> statement-breakpoint
CREATE INDEX "provider_resources_draining_idx" ON "provider_resources" USING btree ("destroy_after") WHERE "provider_resources"."status" = 'draining';--> statement-breakpoint
CREATE INDEX "provider_resources_env_live_idx" ON "provider_resources" USING btree ("environment_id","status") WHERE "provider_resources"."status" NOT IN ('destroyed', 'lost');--> statement-breakpoint
-- What leases of an earlier Berth still owe becomes a resource record (its id the lease's,
-- which is what those drivers named their workspaces after): resource GC takes it from here.
INSERT INTO "provider_resources" ("id", "company_id", "environment_id", "driver", "provider_id", "labels", "state", "status", "lease_id",
    "config_snapshot", "attempts", "next_attempt_at", "last_error", "destroy_after", "ready_at")
SELECT l."id", l."company_id", l."environment_id", l."driver", l."driver_state"->>'cwd',
    jsonb_build_object('berth.resource', l."id"::text, 'berth.lease', l."id"::text, 'berth.environment', coalesce(l."environment_id"::text, ''), 'berth.company', l."company_id"::text),
    coalesce(l."driver_state", '{}'::jsonb),
    CASE WHEN l."status" = 'active' THEN 'leased' WHEN l."status" = 'retained' THEN 'draining' ELSE 'destroying' END,
    l."id",
    coalesce((SELECT jsonb_build_object('driver', e."driver", 'config', e."config") FROM "environments" e WHERE e."id" = l."environment_id"), jsonb_build_object('driver', l."driver", 'config', '{}'::jsonb)),
    l."cleanup_attempts",
    CASE WHEN l."status" IN ('active', 'retained') THEN NULL ELSE coalesce(l."next_cleanup_at", now()) END,
    l."last_cleanup_error", l."retain_until", l."acquired_at"
FROM "environment_leases" l
WHERE l."driver" IS NOT NULL
  AND (l."status" IN ('active', 'retained', 'pending_cleanup') OR l."next_cleanup_at" IS NOT NULL);
--> statement-breakpoint
UPDATE "environment_leases" SET "resource_id" = "id", "next_cleanup_at" = NULL
WHERE "id" IN (SELECT "id" FROM "provider_resources");
