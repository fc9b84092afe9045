CREATE TABLE "berth_secret_key" (
	"singleton" boolean PRIMARY KEY DEFAULT true NOT NULL,
	"key_id" text NOT NULL,
	"recorded_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "berth_secret_key_singleton_ck" CHECK ("berth_secret_key"."singleton")
);
