package org.clientregistry.hapi;

import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.jpa.dao.tx.IHapiTransactionService;
import ca.uhn.fhir.jpa.model.dao.JpaPid;
import ca.uhn.fhir.jpa.searchparam.SearchParameterMap;
import ca.uhn.fhir.rest.annotation.Operation;
import ca.uhn.fhir.rest.annotation.OperationParam;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.param.TokenOrListParam;
import ca.uhn.fhir.rest.server.exceptions.InvalidRequestException;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import javax.sql.DataSource;
import org.hl7.fhir.r4.model.IntegerType;
import org.hl7.fhir.r4.model.StringType;
import org.springframework.jdbc.datasource.DataSourceUtils;

/**
 * {@code GET Patient/$tagged-versions?tag=system|code,system|code&max=N}: the id and current version of every
 * Patient carrying any of the tags (at most {@code max}), without loading, parsing or encoding the resources.
 *
 * <p>The client registry searches its candidates by blocking-key tags. At 100k records, answering those
 * searches with the resources was half of HAPI's CPU during a bulk load (encoding alone a quarter), although
 * the mediator had seen nearly every candidate before. With this operation it asks which records and
 * versions a block holds, and reads only the ones it does not hold in that version. The search is HAPI's own
 * {@code _tag} search (same index, deleted records left out); the versions come from {@code hfj_resource} in
 * the same read-only transaction. Answer: {@code {"ids": [["id", "version"], ...]}} in the search's order.
 */
public class TaggedVersionsProvider {

	static final int MAX = 5000;
	private static final int SQL_CHUNK = 500;

	private final DaoRegistry daoRegistry;
	private final IHapiTransactionService transactions;
	private final DataSource dataSource;

	public TaggedVersionsProvider(
			DaoRegistry daoRegistry, IHapiTransactionService transactions, DataSource dataSource) {
		this.daoRegistry = daoRegistry;
		this.transactions = transactions;
		this.dataSource = dataSource;
	}

	@Operation(name = "$tagged-versions", typeName = "Patient", idempotent = true, manualResponse = true)
	public void taggedVersions(
			@OperationParam(name = "tag", min = 1, max = 1) StringType tag,
			@OperationParam(name = "max", min = 1, max = 1) IntegerType max,
			RequestDetails request,
			HttpServletResponse response)
			throws IOException {
		TokenOrListParam tags = tokens(tag == null ? null : tag.getValue());
		if (max == null || max.getValue() == null || max.getValue() < 1 || max.getValue() > MAX) {
			throw new InvalidRequestException("max must be 1.." + MAX);
		}
		int limit = max.getValue();
		List<String[]> found = transactions.withRequest(request).readOnly().execute(() -> {
			SearchParameterMap map = SearchParameterMap.newSynchronous();
			map.add("_tag", tags);
			map.setLoadSynchronousUpTo(limit);
			List<JpaPid> pids = daoRegistry.getResourceDao("Patient").searchForIds(map, request);
			return versions(pids.size() > limit ? pids.subList(0, limit) : pids);
		});
		response.setStatus(200);
		response.setContentType("application/json");
		response.setCharacterEncoding(StandardCharsets.UTF_8.name());
		try (Writer out = response.getWriter()) {
			out.write("{\"ids\":[");
			for (int i = 0; i < found.size(); i++) {
				out.write(i == 0 ? "[" : ",[");
				out.write(quoted(found.get(i)[0]));
				out.write(",");
				out.write(quoted(found.get(i)[1]));
				out.write("]");
			}
			out.write("]}");
		}
	}

	/** {@code system|code} pairs separated by commas, as {@code _tag} takes them (codes hold no commas). */
	static TokenOrListParam tokens(String value) {
		if (value == null || value.isBlank()) {
			throw new InvalidRequestException("tag is required: system|code[,system|code...]");
		}
		TokenOrListParam tokens = new TokenOrListParam();
		for (String one : value.split(",")) {
			int bar = one.indexOf('|');
			if (bar <= 0 || bar == one.length() - 1) {
				throw new InvalidRequestException("each tag must be system|code: " + one);
			}
			tokens.add(one.substring(0, bar), one.substring(bar + 1));
		}
		return tokens;
	}

	/** (fhir id, version) of each resource, in the order of {@code pids}; records gone meanwhile left out. */
	private List<String[]> versions(List<JpaPid> pids) throws SQLException {
		Map<Long, String[]> byPid = new HashMap<>();
		Connection connection = DataSourceUtils.getConnection(dataSource); // the transaction's connection
		try {
			for (int start = 0; start < pids.size(); start += SQL_CHUNK) {
				List<JpaPid> chunk = pids.subList(start, Math.min(pids.size(), start + SQL_CHUNK));
				String marks = String.join(",", java.util.Collections.nCopies(chunk.size(), "?"));
				try (PreparedStatement statement = connection.prepareStatement(
						"select res_id, fhir_id, res_ver from hfj_resource where res_deleted_at is null and res_id in ("
								+ marks + ")")) {
					for (int i = 0; i < chunk.size(); i++) {
						statement.setLong(i + 1, chunk.get(i).getId());
					}
					try (ResultSet rows = statement.executeQuery()) {
						while (rows.next()) {
							byPid.put(rows.getLong(1), new String[] {rows.getString(2), Long.toString(rows.getLong(3))});
						}
					}
				}
			}
		} finally {
			DataSourceUtils.releaseConnection(connection, dataSource);
		}
		List<String[]> out = new ArrayList<>(pids.size());
		for (JpaPid pid : pids) {
			String[] row = byPid.get(pid.getId());
			if (row != null && row[0] != null) {
				out.add(row);
			}
		}
		return out;
	}

	private static String quoted(String value) {
		StringBuilder out = new StringBuilder(value.length() + 2).append('"');
		for (char c : value.toCharArray()) {
			if (c == '"' || c == '\\') {
				out.append('\\');
			}
			out.append(c);
		}
		return out.append('"').toString();
	}
}
