// An IoT Hub that exists already (the template creates none): the app identity gets IoT Hub Data Contributor
// on it, whose data actions (Microsoft.Devices/IotHubs/*) cover sending cloud-to-device messages and
// receiving their feedback, and the app is told the hub's host name (IOTHUB_HOSTNAME) to sign in to it.

param name string
param appPrincipalId string

var roles = loadJsonContent('../roles.json')

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' existing = {
  name: name
}

resource dataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, appPrincipalId, roles.IoTHubDataContributor)
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.IoTHubDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output hostName string = hub.properties.hostName
