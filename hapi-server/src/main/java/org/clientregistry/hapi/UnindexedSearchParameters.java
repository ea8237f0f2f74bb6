package org.clientregistry.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.RuntimeSearchParam;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.jpa.api.dao.IFhirResourceDao;
import ca.uhn.fhir.jpa.searchparam.SearchParameterMap;
import ca.uhn.fhir.rest.api.server.SystemRequestDetails;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.instance.model.api.IIdType;
import org.hl7.fhir.r4.model.Enumerations;
import org.hl7.fhir.r4.model.SearchParameter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.SmartInitializingSingleton;
import org.springframework.stereotype.Component;

/**
 * Retires the built-in search parameters listed in {@code hapi.unindexed-search-parameters} (idempotently, before
 * the HTTP port opens): a SearchParameter with the built-in one's code, base, type and expression and status
 * {@code retired} replaces it, so HAPI no longer extracts or stores its index rows. The client registry writes
 * each Patient several times (source and golden records, relinks) and never searches HAPI by family or given
 * name, phonetics, birth date, address or telecom (only by whole name, from the admin search): those rows were
 * most of a Patient write's index work. A search by a retired parameter is refused.
 * Rows stored before a parameter was listed stay until their resource is written again or reindexed; a parameter
 * taken off the list is indexed again from then on (run {@code $reindex} for the records already stored).
 */
@Component
public class UnindexedSearchParameters implements SmartInitializingSingleton {

	private static final Logger log = LoggerFactory.getLogger(UnindexedSearchParameters.class);
	private static final String ID_PREFIX = "cr-unindexed-";

	private final HapiProperties props;
	private final JpaStorageSettings settings;
	private final DaoRegistry daoRegistry;
	private final ISearchParamRegistry searchParamRegistry;
	private final FhirContext fhirContext;

	public UnindexedSearchParameters(
			HapiProperties props,
			JpaStorageSettings settings,
			DaoRegistry daoRegistry,
			ISearchParamRegistry searchParamRegistry,
			FhirContext fhirContext) {
		this.props = props;
		this.settings = settings;
		this.daoRegistry = daoRegistry;
		this.searchParamRegistry = searchParamRegistry;
		this.fhirContext = fhirContext;
	}

	@Override
	public void afterSingletonsInstantiated() {
		List<SearchParameter> retired = new ArrayList<>();
		for (String name : props.getUnindexedSearchParameters()) {
			if (!name.isBlank()) {
				retired.add(retired(name.trim()));
			}
		}
		@SuppressWarnings("unchecked")
		IFhirResourceDao<SearchParameter> dao = daoRegistry.getResourceDao("SearchParameter");
		SystemRequestDetails request = new SystemRequestDetails();
		Set<String> wanted = new HashSet<>();
		retired.forEach(sp -> wanted.add(sp.getIdElement().getIdPart()));
		List<IIdType> unlisted = new ArrayList<>();
		for (IBaseResource stored : dao.search(SearchParameterMap.newSynchronous(), request).getAllResources()) {
			String id = stored.getIdElement().getIdPart();
			if (id.startsWith(ID_PREFIX) && !wanted.contains(id)) {
				unlisted.add(stored.getIdElement().toUnqualifiedVersionless());
			}
		}
		if (retired.isEmpty() && unlisted.isEmpty()) {
			return;
		}
		// No reindex job: rows already stored for these parameters are dropped when their resource is next
		// written, or by a $reindex.
		StartupSearchParameters.write(settings, searchParamRegistry, () -> {
			for (SearchParameter sp : retired) {
				dao.update(sp, request); // unchanged on later starts: no new version
			}
			for (IIdType id : unlisted) { // taken off the list: the built-in parameter is back
				dao.delete(id, request);
			}
		});
		log.info("Not indexed (retired search parameters): {}; indexed again: {}",
				props.getUnindexedSearchParameters(), unlisted);
	}

	private SearchParameter retired(String name) {
		int dot = name.indexOf('.');
		if (dot <= 0) {
			throw new IllegalArgumentException("hapi.unindexed-search-parameters: '" + name + "' is not Type.code");
		}
		String type = name.substring(0, dot);
		String code = name.substring(dot + 1);
		RuntimeSearchParam builtIn = fhirContext.getResourceDefinition(type).getSearchParam(code);
		if (builtIn == null) {
			throw new IllegalArgumentException("hapi.unindexed-search-parameters: " + type + " has no search "
					+ "parameter '" + code + "'");
		}
		SearchParameter sp = new SearchParameter();
		sp.setId("SearchParameter/" + ID_PREFIX + type.toLowerCase() + "-" + code);
		sp.setUrl(builtIn.getUri());
		sp.setName(code);
		sp.setCode(code);
		sp.addBase(type);
		sp.setType(Enumerations.SearchParamType.fromCode(builtIn.getParamType().getCode()));
		sp.setExpression(builtIn.getPath());
		sp.setStatus(Enumerations.PublicationStatus.RETIRED);
		sp.setDescription("Not indexed by this server (hapi.unindexed-search-parameters)");
		return sp;
	}
}
