"""Detection on the flow stream and the mail side, the alarm store and notifications."""
