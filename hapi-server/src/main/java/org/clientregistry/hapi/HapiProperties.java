package org.clientregistry.hapi;

import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import java.util.ArrayList;
import java.util.List;
import org.springframework.boot.context.properties.ConfigurationProperties;

/**
 * Settings under {@code hapi.*} in application.yaml. Each one can be overridden by an environment
 * variable through Spring's relaxed binding, e.g. {@code hapi.max-page-size} by {@code HAPI_MAX_PAGE_SIZE}.
 */
@ConfigurationProperties(prefix = "hapi")
public class HapiProperties {

	/** Fixed base URL written into Location headers and Bundle links; empty = derive from the request. */
	private String serverAddress = "";

	/** Page size when the client sends no _count. */
	private int defaultPageSize = 20;

	/** Largest _count honoured (larger values are clamped to this). */
	private int maxPageSize = 1000;

	/** Resource types served; empty = all R4 types. */
	private List<String> supportedResourceTypes = new ArrayList<>();

	/** Allow DELETE and $expunge / _expunge. */
	private boolean expungeEnabled = true;

	/** Refuse deleting a resource that other resources still reference (HTTP 409). */
	private boolean enforceReferentialIntegrityOnDelete = true;

	/**
	 * Reference paths that never block a delete: records of what happened (AuditEvents, review Tasks'
	 * focus) keep naming a source record its point-of-service system retracted; its history stays readable.
	 */
	private List<String> enforceReferentialIntegrityOnDeleteDisableForPaths =
			new ArrayList<>(List.of("AuditEvent.entity.what", "Task.focus"));

	/** Allow a conditional DELETE (e.g. DELETE Patient?_tag=...) to remove more than one resource. */
	private boolean allowMultipleDelete = true;

	/** Id strategy for server-assigned ids (POST): SEQUENTIAL_NUMERIC or UUID. */
	private JpaStorageSettings.IdStrategyEnum serverIdStrategy = JpaStorageSettings.IdStrategyEnum.SEQUENTIAL_NUMERIC;

	/** Client-assigned ids (PUT to a new id): ALPHANUMERIC (ids must contain a letter), ANY, or NOT_ALLOWED. */
	private JpaStorageSettings.ClientIdStrategyEnum clientIdStrategy =
			JpaStorageSettings.ClientIdStrategyEnum.ALPHANUMERIC;

	/** Log one line per request. */
	private boolean requestLogging = false;

	/**
	 * How meta.tag is stored. INLINE (default): in the resource body, searched through a {@code _tag} token
	 * SearchParameter the server defines at startup, no tag tables and no tag definition rows (HAPI writes
	 * records with several unique tags about twice as fast); VERSIONED / NON_VERSIONED: HAPI's tag tables.
	 * Fixed for the life of a database: the server refuses INLINE on a database that already holds tag
	 * definitions.
	 */
	private JpaStorageSettings.TagStorageModeEnum tagStorageMode = JpaStorageSettings.TagStorageModeEnum.INLINE;

	/** Resource bodies shorter than this many characters are stored in the version row, not a LOB. */
	private int inlineResourceTextBelowSize = 4000;

	/**
	 * Built-in search parameters HAPI should not index ("Type.code"): each is overridden at startup by a
	 * SearchParameter with status {@code retired}, so writes skip extracting and storing its index rows.
	 * The default: the Patient demographics the client registry never searches HAPI by (it finds candidates
	 * through its block tags and records by id or identifier); identifier, name (the admin search) and the
	 * reference parameters stay. And the AuditEvent parameters it never searches by: it looks events up by
	 * entity, subtype and date only. The registry writes one AuditEvent per transaction naming each record
	 * and golden record in it, and {@code patient} indexed every one of those references a second time.
	 * And the review Task parameters it never searches by: {@code patient} repeats {@code subject} (the
	 * golden record), {@code intent} and {@code priority} are the same on every review Task.
	 * Empty: index everything. Rows already stored stay until their resource is written again or reindexed.
	 */
	private List<String> unindexedSearchParameters = new ArrayList<>(List.of(
			"Patient.active", "Patient.address", "Patient.address-city", "Patient.address-country",
			"Patient.address-postalcode", "Patient.address-state", "Patient.address-use", "Patient.birthdate",
			"Patient.death-date", "Patient.deceased", "Patient.email", "Patient.family", "Patient.gender",
			"Patient.given", "Patient.language", "Patient.phone", "Patient.phonetic",
			"Patient.telecom", "AuditEvent.action", "AuditEvent.address", "AuditEvent.entity-role",
			"AuditEvent.entity-type", "AuditEvent.outcome", "AuditEvent.patient", "AuditEvent.type",
			"Task.intent", "Task.patient", "Task.priority"));

	public String getServerAddress() { return serverAddress; }
	public void setServerAddress(String v) { serverAddress = v; }
	public int getDefaultPageSize() { return defaultPageSize; }
	public void setDefaultPageSize(int v) { defaultPageSize = v; }
	public int getMaxPageSize() { return maxPageSize; }
	public void setMaxPageSize(int v) { maxPageSize = v; }
	public List<String> getSupportedResourceTypes() { return supportedResourceTypes; }
	public void setSupportedResourceTypes(List<String> v) { supportedResourceTypes = v; }
	public boolean isExpungeEnabled() { return expungeEnabled; }
	public void setExpungeEnabled(boolean v) { expungeEnabled = v; }
	public boolean isEnforceReferentialIntegrityOnDelete() { return enforceReferentialIntegrityOnDelete; }
	public void setEnforceReferentialIntegrityOnDelete(boolean v) { enforceReferentialIntegrityOnDelete = v; }
	public List<String> getEnforceReferentialIntegrityOnDeleteDisableForPaths() {
		return enforceReferentialIntegrityOnDeleteDisableForPaths;
	}
	public void setEnforceReferentialIntegrityOnDeleteDisableForPaths(List<String> v) {
		enforceReferentialIntegrityOnDeleteDisableForPaths = v;
	}
	public boolean isAllowMultipleDelete() { return allowMultipleDelete; }
	public void setAllowMultipleDelete(boolean v) { allowMultipleDelete = v; }
	public JpaStorageSettings.IdStrategyEnum getServerIdStrategy() { return serverIdStrategy; }
	public void setServerIdStrategy(JpaStorageSettings.IdStrategyEnum v) { serverIdStrategy = v; }
	public JpaStorageSettings.ClientIdStrategyEnum getClientIdStrategy() { return clientIdStrategy; }
	public void setClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum v) { clientIdStrategy = v; }
	public JpaStorageSettings.TagStorageModeEnum getTagStorageMode() { return tagStorageMode; }
	public void setTagStorageMode(JpaStorageSettings.TagStorageModeEnum v) { tagStorageMode = v; }
	public int getInlineResourceTextBelowSize() { return inlineResourceTextBelowSize; }

	public List<String> getUnindexedSearchParameters() { return unindexedSearchParameters; }

	public void setUnindexedSearchParameters(List<String> v) { unindexedSearchParameters = v; }
	public void setInlineResourceTextBelowSize(int v) { inlineResourceTextBelowSize = v; }
	public boolean isRequestLogging() { return requestLogging; }
	public void setRequestLogging(boolean v) { requestLogging = v; }
}
