CREATE TABLE "agents" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"company_id" uuid NOT NULL,
	"name" text NOT NULL,
	"adapter_type" text NOT NULL,
	"adapter_config" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"default_environment_id" uuid,
	"status" text DEFAULT 'active' NOT NULL,
	"max_concurrent_runs" integer DEFAULT 1 NOT NULL,
	"running_count" integer DEFAULT 0 NOT NULL,
	"interval_sec" integer,
	"last_timer_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "agents_max_concurrent_ck" CHECK ("agents"."max_concurrent_runs" >= 1),
	CONSTRAINT "agents_running_count_ck" CHECK ("agents"."running_count" >= 0)
);
--> statement-breakpoint
CREATE TABLE "berth_servers" (
	"id" text PRIMARY KEY NOT NULL,
	"hostname" text NOT NULL,
	"pid" integer NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"heartbeat_at" timestamp with time zone DEFAULT now() NOT NULL,
	"stopped_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "heartbeat_run_logs" (
	"run_id" uuid NOT NULL,
	"seq" integer NOT NULL,
	"ts" timestamp with time zone NOT NULL,
	"stream" text NOT NULL,
	"chunk" text NOT NULL,
	CONSTRAINT "heartbeat_run_logs_run_id_seq_pk" PRIMARY KEY("run_id","seq")
);
--> statement-breakpoint
CREATE TABLE "heartbeat_runs" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"company_id" uuid NOT NULL,
	"agent_id" uuid NOT NULL,
	"status" text DEFAULT 'queued' NOT NULL,
	"invocation_source" text NOT NULL,
	"context_snapshot" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"exit_code" integer,
	"signal" text,
	"error" text,
	"error_code" text,
	"environment_id" uuid,
	"lease_id" uuid,
	"token_hash" text,
	"server_id" text,
	"hostname" text,
	"pid" integer,
	"heartbeat_at" timestamp with time zone,
	"cancel_requested_at" timestamp with time zone,
	"log_seq" integer DEFAULT 0 NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"started_at" timestamp with time zone,
	"finished_at" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "agents" ADD CONSTRAINT "agents_company_id_companies_id_fk" FOREIGN KEY ("company_id") REFERENCES "public"."companies"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "agents" ADD CONSTRAINT "agents_default_environment_id_environments_id_fk" FOREIGN KEY ("default_environment_id") REFERENCES "public"."environments"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "heartbeat_run_logs" ADD CONSTRAINT "heartbeat_run_logs_run_id_heartbeat_runs_id_fk" FOREIGN KEY ("run_id") REFERENCES "public"."heartbeat_runs"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "heartbeat_runs" ADD CONSTRAINT "heartbeat_runs_company_id_companies_id_fk" FOREIGN KEY ("company_id") REFERENCES "public"."companies"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "heartbeat_runs" ADD CONSTRAINT "heartbeat_runs_agent_id_agents_id_fk" FOREIGN KEY ("agent_id") REFERENCES "public"."agents"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "agents_company_name_uq" ON "agents" USING btree ("company_id","name");--> statement-breakpoint
CREATE INDEX "agents_timer_idx" ON "agents" USING btree ("last_timer_at") WHERE "agents"."interval_sec" IS NOT NULL AND "agents"."status" = 'active';--> statement-breakpoint
CREATE INDEX "heartbeat_runs_queued_idx" ON "heartbeat_runs" USING btree ("created_at") WHERE "heartbeat_runs"."status" = 'queued';--> statement-breakpoint
CREATE INDEX "heartbeat_runs_running_idx" ON "heartbeat_runs" USING btree ("server_id") WHERE "heartbeat_runs"."status" = 'running';--> statement-breakpoint
CREATE INDEX "heartbeat_runs_company_created_idx" ON "heartbeat_runs" USING btree ("company_id","created_at" DESC NULLS LAST,"id" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "heartbeat_runs_agent_created_idx" ON "heartbeat_runs" USING btree ("agent_id","created_at" DESC NULLS LAST);