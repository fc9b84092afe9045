CREATE SEQUENCE "public"."environment_lease_fence_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1;--> statement-breakpoint
CREATE TABLE "activity_log" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "activity_log_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"company_id" uuid NOT NULL,
	"actor_type" text NOT NULL,
	"actor_id" text,
	"action" text NOT NULL,
	"entity_type" text NOT NULL,
	"entity_id" text NOT NULL,
	"run_id" uuid,
	"details" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "companies" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"name" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "environment_leases" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"company_id" uuid NOT NULL,
	"environment_id" uuid,
	"execution_workspace_id" text,
	"issue_id" text,
	"heartbeat_run_id" uuid,
	"status" text NOT NULL,
	"lease_policy" text NOT NULL,
	"provider" text,
	"provider_lease_id" text,
	"fence" bigint NOT NULL,
	"idempotency_key" text,
	"acquired_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_used_at" timestamp with time zone DEFAULT now() NOT NULL,
	"expires_at" timestamp with time zone,
	"max_expires_at" timestamp with time zone,
	"renew_count" integer DEFAULT 0 NOT NULL,
	"last_renewed_at" timestamp with time zone,
	"released_at" timestamp with time zone,
	"failure_reason" text,
	"cleanup_status" text,
	"release_status" text,
	"cleanup_attempts" integer DEFAULT 0 NOT NULL,
	"next_cleanup_at" timestamp with time zone,
	"last_cleanup_error" text,
	"metadata" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "environment_leases_fence_ck" CHECK ("environment_leases"."fence" > 0)
);
--> statement-breakpoint
CREATE TABLE "environments" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"company_id" uuid NOT NULL,
	"name" text NOT NULL,
	"description" text,
	"driver" text NOT NULL,
	"status" text DEFAULT 'active' NOT NULL,
	"config" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"env_vars" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"metadata" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"capacity" integer,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "environments_capacity_ck" CHECK ("environments"."capacity" IS NULL OR "environments"."capacity" >= 0)
);
--> statement-breakpoint
ALTER TABLE "environment_leases" ADD CONSTRAINT "environment_leases_environment_id_environments_id_fk" FOREIGN KEY ("environment_id") REFERENCES "public"."environments"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "environments" ADD CONSTRAINT "environments_company_id_companies_id_fk" FOREIGN KEY ("company_id") REFERENCES "public"."companies"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "activity_log_company_idx" ON "activity_log" USING btree ("company_id","id" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "activity_log_entity_idx" ON "activity_log" USING btree ("company_id","entity_id","id" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "activity_log_run_idx" ON "activity_log" USING btree ("company_id","run_id","id" DESC NULLS LAST) WHERE "activity_log"."run_id" IS NOT NULL;--> statement-breakpoint
CREATE INDEX "activity_log_action_idx" ON "activity_log" USING btree ("company_id","action","id" DESC NULLS LAST);--> statement-breakpoint
CREATE UNIQUE INDEX "environment_leases_idempotency_uq" ON "environment_leases" USING btree ("company_id","idempotency_key") WHERE "environment_leases"."idempotency_key" IS NOT NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "environment_leases_active_run_uq" ON "environment_leases" USING btree ("heartbeat_run_id","environment_id") WHERE "environment_leases"."status" = 'active' AND "environment_leases"."heartbeat_run_id" IS NOT NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "environment_leases_active_workspace_uq" ON "environment_leases" USING btree ("environment_id","execution_workspace_id") WHERE "environment_leases"."status" = 'active' AND "environment_leases"."lease_policy" = 'ephemeral' AND "environment_leases"."execution_workspace_id" IS NOT NULL;--> statement-breakpoint
CREATE INDEX "environment_leases_env_used_idx" ON "environment_leases" USING btree ("environment_id","last_used_at","id");--> statement-breakpoint
CREATE INDEX "environment_leases_env_active_idx" ON "environment_leases" USING btree ("environment_id","last_used_at","id") WHERE "environment_leases"."status" = 'active';--> statement-breakpoint
CREATE INDEX "environment_leases_expiry_idx" ON "environment_leases" USING btree ("expires_at") WHERE "environment_leases"."status" = 'active' AND "environment_leases"."expires_at" IS NOT NULL;--> statement-breakpoint
CREATE INDEX "environment_leases_cleanup_due_idx" ON "environment_leases" USING btree ("next_cleanup_at") WHERE "environment_leases"."next_cleanup_at" IS NOT NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "environments_company_name_uq" ON "environments" USING btree ("company_id","name");--> statement-breakpoint
CREATE UNIQUE INDEX "environments_company_local_uq" ON "environments" USING btree ("company_id") WHERE "environments"."driver" = 'local';--> statement-breakpoint
CREATE INDEX "environments_company_updated_idx" ON "environments" USING btree ("company_id","updated_at" DESC NULLS LAST,"id" DESC NULLS LAST);