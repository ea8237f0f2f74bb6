package org.clientregistry.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.jpa.api.dao.IFhirResourceDao;
import ca.uhn.fhir.rest.api.server.SystemRequestDetails;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import javax.sql.DataSource;
import org.hl7.fhir.r4.model.Enumerations;
import org.hl7.fhir.r4.model.SearchParameter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.SmartInitializingSingleton;
import org.springframework.stereotype.Component;

/**
 * With tags stored INLINE, HAPI answers {@code _tag}, {@code _security} and {@code _profile} through ordinary
 * SearchParameters over {@code meta.*}: this defines them (idempotently) once the beans exist and before the
 * HTTP port opens, so the first request can already search by tag. Refuses to start INLINE on a database
 * whose tags were stored in HAPI's tag tables (those would become unsearchable).
 */
@Component
public class InlineTagSearchParameters implements SmartInitializingSingleton {

	private static final Logger log = LoggerFactory.getLogger(InlineTagSearchParameters.class);

	private final JpaStorageSettings settings;
	private final DaoRegistry daoRegistry;
	private final ISearchParamRegistry searchParamRegistry;
	private final DataSource dataSource;
	private final FhirContext fhirContext;

	public InlineTagSearchParameters(
			JpaStorageSettings settings,
			DaoRegistry daoRegistry,
			ISearchParamRegistry searchParamRegistry,
			DataSource dataSource,
			FhirContext fhirContext) {
		this.settings = settings;
		this.daoRegistry = daoRegistry;
		this.searchParamRegistry = searchParamRegistry;
		this.dataSource = dataSource;
		this.fhirContext = fhirContext;
	}

	@Override
	public void afterSingletonsInstantiated() {
		if (settings.getTagStorageMode() != JpaStorageSettings.TagStorageModeEnum.INLINE) {
			return;
		}
		long definitions = tagDefinitionRows();
		if (definitions > 0) {
			throw new IllegalStateException("This database holds " + definitions + " tag definitions stored in "
					+ "HAPI's tag tables; INLINE tag storage would leave them unsearchable. Start it with "
					+ "HAPI_TAG_STORAGE_MODE=VERSIONED, or use an empty database.");
		}
		@SuppressWarnings("unchecked")
		IFhirResourceDao<SearchParameter> dao = daoRegistry.getResourceDao("SearchParameter");
		SystemRequestDetails request = new SystemRequestDetails();
		// Nothing to reindex (no tag definitions, and INLINE from the start).
		StartupSearchParameters.write(settings, searchParamRegistry, () -> define(dao, request));
		log.info("Tags stored INLINE; _tag/_security/_profile searched through SearchParameters over meta.*");
	}

	private void define(IFhirResourceDao<SearchParameter> dao, SystemRequestDetails request) {
		dao.update(parameter("cr-inline-tag", "_tag", "Tag", Enumerations.SearchParamType.TOKEN, "meta.tag"), request);
		dao.update(
				parameter("cr-inline-security", "_security", "Security", Enumerations.SearchParamType.TOKEN,
						"meta.security"),
				request);
		dao.update(
				parameter("cr-inline-profile", "_profile", "Profile", Enumerations.SearchParamType.URI, "meta.profile"),
				request);
	}

	private SearchParameter parameter(
			String id, String code, String name, Enumerations.SearchParamType type, String expression) {
		SearchParameter sp = new SearchParameter();
		sp.setId("SearchParameter/" + id);
		fhirContext.getResourceTypes().stream().sorted().forEach(sp::addBase);
		sp.setUrl("http://client-registry.example.org/fhir/SearchParameter/" + id);
		sp.setStatus(Enumerations.PublicationStatus.ACTIVE);
		sp.setType(type);
		sp.setCode(code);
		sp.setName(name);
		sp.setDescription(name + " (meta." + code.substring(1) + ") for INLINE tag storage");
		sp.setExpression(expression);
		return sp;
	}

	private long tagDefinitionRows() {
		try (Connection c = dataSource.getConnection();
				Statement st = c.createStatement();
				ResultSet rs = st.executeQuery("SELECT COUNT(*) FROM HFJ_TAG_DEF")) {
			return rs.next() ? rs.getLong(1) : 0;
		} catch (SQLException e) {
			return 0; // no tag table yet: an empty database
		}
	}
}
